"""The HTTP routes: the chat pages, search, shares, exports, images, tokens, accounts, admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from conversations import export, image_views, search, sharing, views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/", views.conversation_list, name="conversation_list"),
    path("c/<uuid:conversation_id>/", views.chat, name="conversation"),
    path(
        "c/<uuid:conversation_id>/messages/",
        views.conversation_messages,
        name="conversation_messages",
    ),
    path("c/<uuid:conversation_id>/rename/", views.rename_conversation, name="rename_conversation"),
    path("c/<uuid:conversation_id>/delete/", views.delete_conversation, name="delete_conversation"),
    path("images/", image_views.gallery, name="gallery"),
    path("c/<uuid:conversation_id>/shares/", sharing.shares, name="shares"),
    path(
        "c/<uuid:conversation_id>/shares/<int:share_id>/revoke/",
        sharing.revoke_share,
        name="revoke_share",
    ),
    path("c/<uuid:conversation_id>/export.md", export.export_markdown, name="export_markdown"),
    path("c/<uuid:conversation_id>/export.zip", export.export_zip, name="export_zip"),
    path("search/", search.search_view, name="search"),
    path("s/<str:token>/", sharing.shared, name="shared"),
    path("s/<str:token>/images/<uuid:image_id>/", sharing.shared_image, name="shared_image"),
    path("images/<uuid:image_id>/", views.image, name="image"),
    path("images/<uuid:image_id>/thumb/", image_views.image_thumbnail, name="image_thumbnail"),
    path("attachments/", image_views.upload, name="upload_attachment"),
    path("attachments/<uuid:attachment_id>/", image_views.attachment, name="attachment"),
    path(
        "attachments/<uuid:attachment_id>/thumb/",
        image_views.attachment_thumbnail,
        name="attachment_thumbnail",
    ),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke_token"),
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Own template names: the admin's password pages keep their own look.
    path(
        "account/password/",
        auth_views.PasswordChangeView.as_view(
            template_name="account/password_change.html",
            success_url=reverse_lazy("password_change_done"),
        ),
        name="password_change",
    ),
    path(
        "account/password/done/",
        auth_views.PasswordChangeDoneView.as_view(
            template_name="account/password_change_done.html"
        ),
        name="password_change_done",
    ),
    path("admin/", admin.site.urls),
    path("favicon.ico", views.favicon, name="favicon"),
]
